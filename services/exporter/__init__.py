"""The build-time exporter: the packaged weights → the model directory the model server loads.

It shares only services/artifacts.py with the server, so an image's build stage needs nothing else.
"""
