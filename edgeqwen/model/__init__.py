"""The one description of a checkpoint (stdlib only): what its config files say, parsed once, read by
the compiler, the references and the planner alike."""
