from setuptools import setup

# All metadata lives in setup.cfg; this file keeps `pip install .` and legacy
# tooling working.
setup()
