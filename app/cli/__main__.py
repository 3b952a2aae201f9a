"""`python -m app.cli`: how the launcher, the benchmark and the tests start `babelq`."""

from __future__ import annotations

from app.cli import main

if __name__ == "__main__":
    main()
