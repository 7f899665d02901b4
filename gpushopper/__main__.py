"""Allow ``python -m gpushopper``."""

from gpushopper.cli import main

if __name__ == "__main__":
    main()
