"""One module per `lottery` subcommand, each with `add_parser(subparsers)`."""
