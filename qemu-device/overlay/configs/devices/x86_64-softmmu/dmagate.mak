# The devices dmagate's guest needs, nothing more: q35 with PCIe root
# ports, intel-iommu and virtio-net-pci, and the device under test (dmagate).
CONFIG_Q35=y
CONFIG_VTD=y
CONFIG_PCIE_PORT=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_DMAGATE=y
