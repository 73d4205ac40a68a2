"""Sources over events that another library stored, reached through that library's own API.

Nothing here imports a database driver of ours; each module imports the library it reads
(an optional extra), so ``import projectionist`` imports none of them.
"""
