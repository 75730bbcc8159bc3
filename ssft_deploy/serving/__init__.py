"""Serving: the bundle's extractors on Triton Inference Server through PyTriton.

``pytriton_server`` runs inside its own environment (``.venv-triton``: PyTriton pins numpy < 2 and
its own protobuf); ``launch`` starts it from any environment as a subprocess on loopback, with
``LD_LIBRARY_PATH`` set so Triton's Python backend loads the matching libpython. Importing this
package imports neither PyTriton nor tritonclient.
"""
