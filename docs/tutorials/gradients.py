# %% [markdown]
# # Vanishing vs non-vanishing gradients at depth 256
#
# A plain deep tanh network squeezes the gradient a little at every layer; at depth 256 almost nothing reaches
# the first layers. An H2 network integrated with symplectic Euler cannot do that: TAC proves
# `‖∂y_N/∂y_j‖₂ ≥ 1` for every j, at any depth.

# %%
import matplotlib.pyplot as plt
import torch

import hamode
from hamode.diagnostics import backward_sensitivity, sensitivity_norms

torch.manual_seed(0)
depth, dim = 256, 4
x = torch.randn(8, dim, dtype=torch.float64)

# a residual-free tanh MLP of the same depth and width
weights = [torch.randn(dim, dim, dtype=torch.float64) / dim**0.5 for _ in range(depth)]


def mlp_norms(x):
    """||∂y_N/∂y_j||_2 per boundary j (mean over the samples), by autograd."""
    states = [x.clone().requires_grad_(True)]
    for W in weights:
        states.append(torch.tanh(states[-1] @ W.T))
    out = []
    for j in range(depth + 1):
        jac = torch.stack(
            [torch.autograd.grad(states[-1][:, i].sum(), states[j], retain_graph=True)[0] for i in range(dim)], 1
        )
        out.append(float(torch.linalg.matrix_norm(jac, 2).mean()))
    return out


field = hamode.make_field("H2", dim=dim, n_layers=depth, dtype=torch.float64)
h2 = hamode.HamiltonianNet(field, t_end=0.1 * depth, integrator="symplectic_euler")
h2_norms = sensitivity_norms(backward_sensitivity(h2, x))
mlp = mlp_norms(x)
print(f"MLP: ||dy_N/dy_0|| = {mlp[0]:.2e}")
print(f"H2 : min over j and samples of ||dy_N/dy_j|| = {float(h2_norms['norm_min'].min()):.4f}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(mlp, label="tanh MLP")
ax.semilogy(h2_norms["norm_mean"], label="H2, symplectic Euler")
ax.axhline(1.0, color="k", lw=0.8, ls="--")
ax.set_xlabel("layer boundary j")
ax.set_ylabel("||dy_N/dy_j||_2 (mean over samples)")
ax.set_title(f"depth {depth}")
ax.legend()
