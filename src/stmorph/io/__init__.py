"""stmorph.io"""
