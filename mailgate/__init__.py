"""mailgate: an inbound mail server for a customer-support helpdesk."""

__version__ = "0.1.0"
