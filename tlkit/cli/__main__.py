"""`python -m tlkit.cli`, as the `tlkit` command."""
from tlkit.cli import main

main()
