"""The stage kinds of recipes, one module each; importing this package registers them in
`tlkit.recipe.kinds.STAGES`. A new kind is one new module here, imported below."""
from tlkit.stages import autoencoder, extract, finetune, head, train  # noqa: F401
