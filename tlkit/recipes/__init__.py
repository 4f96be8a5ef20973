"""The built-in recipes, importable by name: `from tlkit.recipes import classic`.

Each is read from the TOML file of the same name beside this module (also `recipes/` at the top
of the repository), so editing a file changes the recipe.
"""
from tlkit.recipe.schema import builtin_recipes


def __getattr__(name):
    recipes = builtin_recipes()
    if name in recipes:
        return recipes[name]
    raise AttributeError(f"no built-in recipe {name!r}; there are {', '.join(recipes)}")


def __dir__():
    return list(builtin_recipes())
