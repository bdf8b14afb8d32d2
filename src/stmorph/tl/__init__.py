"""stmorph.tl"""
