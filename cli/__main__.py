"""`python -m cli ...` is `slmops ...` (the e2e tests and the demo start processes this way)."""
from cli.main import main

main()
