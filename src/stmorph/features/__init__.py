"""stmorph.features"""
