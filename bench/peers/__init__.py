"""Peer serving systems for `make bench`: Triton, Mosec and LitServe serving the same TFLite artifact.

Each runs from its own virtualenv (build/bench-venvs/<peer>, installed on first use from
requirements/<peer>.txt), with the same preprocessing as zerolens (services.imaging) and the same
interpreter setup (services.model.runtime.open_interpreter: LiteRT with XNNPACK). The server scripts
(triton.py, mosec_server.py, litserve_server.py) import only the Pillow/numpy/LiteRT parts of the checkout
(model.py); launcher.py installs, starts and stops them.
"""

PEERS = ("triton", "mosec", "litserve")
