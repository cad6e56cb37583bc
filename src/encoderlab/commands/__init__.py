"""One thin module per `encoderlab` command; each has `main(argv) -> exit code`."""
