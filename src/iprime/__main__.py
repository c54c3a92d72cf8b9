"""``python -m iprime ...`` runs the command line; ``torchrun --nproc_per_node=N -m iprime train ...``
runs it once per rank (data-parallel training, see :mod:`iprime.train.distributed`)."""

from iprime.cli import main

if __name__ == "__main__":
    main()
