"""`dsla-serve` subcommands of the serving application: serve, deploy, build, status.

Each module has HELP, add_arguments(parser) and run(args) -> int (the dispatcher's contract).
"""
