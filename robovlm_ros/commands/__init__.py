"""One module per ``robovlm-ros`` subcommand: its argument parser and what it prints. The work is
done by the library (model/, runtime/, data/, train/, sim/, ros/), imported only when the command
runs, so ``robovlm-ros bench`` never loads the bag reader and ``--help`` starts fast."""
