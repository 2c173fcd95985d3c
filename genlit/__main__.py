"""``python -m genlit`` is the ``genlit`` command."""

from genlit.cli import main

if __name__ == "__main__":
    main()
