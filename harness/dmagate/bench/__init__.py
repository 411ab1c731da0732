"""The benchmarks behind `make bench`: boot (boot.py), the device's data
rate (device.py), the protocol's cycle against its alternatives (cycle.py);
run.py runs them all, report.py writes the JSON, the plots and the ratios.
Numbers only: nothing here asserts on time."""
