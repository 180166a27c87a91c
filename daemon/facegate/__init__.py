"""facegate: real-time face-recognition access control.

Data flows cameras → capture → inference → decision → events; see DESIGN.md in the shared folder and README.md.
"""

__version__ = "0.1.0"
