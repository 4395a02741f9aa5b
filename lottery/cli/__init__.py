"""The `lottery` command: the entry point and one module per subcommand."""
