"""dmagate: boot a guest on QEMU built with the dmagate device, drive it over
console, QMP and SSH, and tell whether the kernel stayed clean.

The library is the product (start with ``dmagate.vm.VM``); ``dmagate.cli``
and ``dmagate.pytest_plugin`` are thin layers over it.
"""
