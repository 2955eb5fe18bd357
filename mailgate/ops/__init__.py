"""Running mailgate: the daemon that hosts every part, the pieces it builds from a config
(`app`), the setup wizard, `doctor`, the lock on the data directory, systemd notification,
logging and metrics."""
