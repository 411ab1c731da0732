#include "trace/trace-hw_dmagate.h"
