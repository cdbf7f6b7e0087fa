"""What a run costs: throughputs measured on this machine (``bench``) and the plan of a
config computed from them (``plan``)."""
