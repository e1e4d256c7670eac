"""3D CNNs built from ClinicaDL's ``convolutions`` / ``fc`` description.

A description is a plain dict (it goes to ``model.json``)::

    {"convolutions": {"conv0": {"in_channels": 1, "out_channels": 8,
                                "n_conv": 2, "d_reduction": "MaxPooling"}, ...},
     "fc": {"FC0": {"in_features": 16128, "out_features": 180}, ...},
     "dropout": 0.1, "network_normalization": "BatchNorm", "pooling": "flatten"}

Every block halves each spatial size (rounding up), by max pooling or by a
stride-2 convolution. The default network (``model.conv_channels``) ends in
global average pooling so it fits any input shape.
"""
