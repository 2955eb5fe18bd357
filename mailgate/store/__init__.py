"""The store: SQLite through sqlite-utils (WAL, migrations in code) and files under data_dir.

Input: decisions made by the stages. Output: durable rows and files; read helpers for the CLI.
"""
