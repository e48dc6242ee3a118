"""hsconas: hardware-aware neural architecture search for edge devices (HSCoNAS, DATE 2021).

The package reads in pipeline order:

    space      -> the search space, architectures, sampling and counting
    blocks     -> the one definition of every block (supernet, subnet and latency table share it)
    supernet   -> the weight-sharing supernet and ``build_subnet``
    data       -> datasets and the train / BN-calibration / validation split
    ...        -> later stages: calibrate, train, shrink, search (see the README)

``hsconas_cli.cli`` is the thin Typer layer over these modules.
"""

__version__ = "0.2.0"
