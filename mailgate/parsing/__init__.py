"""The parse stage: raw bytes → `ParsedMail` (MIME, charsets, TNEF, attached mail, HTML),
the reply text of a message, and the content digest that makes two deliveries one mail."""
