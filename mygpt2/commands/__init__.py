"""The command line: one module per `mygpt2` subcommand, each with a `cli(argv)` function.

Commands parse flags, call the library, and print; the library below them raises
`MyGPT2Error` and returns values, and never reads `sys.argv`.
"""
