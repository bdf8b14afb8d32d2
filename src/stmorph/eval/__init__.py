"""stmorph.eval"""
