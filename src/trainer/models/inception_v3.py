"""Inception v3, Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception Architecture for Computer
Vision", CVPR 2016 (arXiv:1512.00567).

The catalogue uses timm's `inception_v3`, the TF-slim release (as torchvision's), which is not exactly the paper's
Figure 5 / Table 1 network: Mixed_5b has a 5x5 branch (the paper factorises 5x5 into two 3x3, Figure 5), the stem
differs from Table 1's, and the auxiliary head's FC has no batch norm (the paper's "BN-auxiliary", Table 3, has it;
the head's convolutions are batch-normalised). The paper's figures belong to its network, not exactly to this one.
The auxiliary classifier (Sec. 4) is off in the default build: `entry.params` counts the network without it
(23,834,568; timm's 23.8 M), not torchvision's 27.16 M, which includes the aux head's 3.33 M. Build it with
`create_model("inception_v3", aux_logits=True)`: in train mode the model then returns (logits, aux_logits); in eval
mode logits only. Input 299 px, eval centre crop 0.875 (TF-slim's inception preprocessing, as timm's cfg), bilinear
resize as TF-slim. The paper's accuracy is the single-crop single-model row of Table 3 (21.2 / 5.6 % error).
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Rethinking the Inception Architecture for Computer Vision",
    "Szegedy, Vanhoucke, Ioffe, Shlens, Wojna",
    2016,
    "1512.00567",
)

register(
    ModelEntry(
        name="inception_v3",
        builder="inception_v3",
        family="inception_v3",
        paper=PAPER,
        params=23_834_568,
        recipe="inception_v3",
        resolution=299,
        min_resolution=75,
        top1=78.8,
        top5=94.4,
        protocol="1-crop (Table 3)",
        notes=(
            "TF-slim's release, not exactly the paper's Fig. 5 / Table 1: 5x5 branch in Mixed_5b, another stem, no BN "
            "on the aux head's FC (not the paper's BN-auxiliary); aux_logits=True adds the head (3.33 M)"
        ),
    )
)
