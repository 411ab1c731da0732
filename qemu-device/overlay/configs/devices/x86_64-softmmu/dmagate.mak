# The devices dmagate's guest needs, nothing more: q35 with PCIe root
# ports, intel-iommu, virtio-net-pci, pvpanic-pci (a panicking guest is
# paused for a memory dump), and the device under test (dmagate).
CONFIG_Q35=y
CONFIG_VTD=y
CONFIG_PCIE_PORT=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_PVPANIC_PCI=y
CONFIG_DMAGATE=y
