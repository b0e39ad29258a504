"""Generated run names in the style "brave-owl-417"."""

import secrets

_ADJECTIVES = (
    "able amber bold brave bright calm clever crisp curious daring eager fair fierce gentle "
    "glad golden grand happy honest humble jolly keen kind lively loyal lucky merry mighty "
    "nimble noble proud quick quiet rapid rare silent smooth snappy steady sunny swift tidy "
    "upbeat valiant vivid warm wise witty young zealous"
).split()
_NOUNS = (
    "ant bat bear bee bison cat colt crane crow deer dog dove eagle elk falcon finch fox frog "
    "gnu goat hare hawk heron horse jay koala lark lion lynx mole moth newt owl ox panda "
    "pig puma quail ram raven robin seal shark sheep slug snail stork swan tiger toad trout "
    "wasp whale wolf wren yak zebra"
).split()


def generate() -> str:
    """A random, readable run name."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"
