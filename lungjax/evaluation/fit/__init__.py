"""What is chosen on the validation split and held fixed after: temperatures, operating points, the
decision rule, the validation fit. The standalone predictor imports its temperature and decision
modules, so this package's __init__ imports nothing."""
