from tests.fast_hashing import fast_hashing_in_this_folder  # noqa: F401  (autouse: every test of this folder)
