"""Running the stack: embedded servers, `babelq up`, process supervision, the bench."""
