"""``python -m stmorph`` (and ``torchrun ... -m stmorph vae ...``): the command line."""

from .cli import main

if __name__ == "__main__":
    main()
