"""The XDS.b message builders under their test-side name: they live in ``conformance.xds_builder``
because the reference edge and PHR use them too. One module, two names."""

import sys

from conformance import xds_builder

sys.modules[__name__] = xds_builder
