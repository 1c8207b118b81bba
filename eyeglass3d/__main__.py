"""`python -m eyeglass3d ...` is the same as the `eyeglass3d` command."""

from .cli import main

raise SystemExit(main())
