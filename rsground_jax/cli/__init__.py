"""The `rsground` command line: thin subcommands that parse arguments and call the library."""
