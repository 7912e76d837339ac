"""Capsule maths and layers, knowing nothing of data, training or tools: routing
(:mod:`~capsnet.nn.routing`, the registry; :mod:`~capsnet.nn.dynamic`, :mod:`~capsnet.nn.em`,
:mod:`~capsnet.nn.em_conv`), layers (:mod:`~capsnet.nn.layers`), losses
(:mod:`~capsnet.nn.losses`), the convolution (:mod:`~capsnet.nn.conv`) and its fast paths
(:mod:`~capsnet.nn.dftconv`, :mod:`~capsnet.nn.patchconv`) and the native kernels
(:mod:`~capsnet.nn.native`, C++ sources in ``csrc/``)."""
