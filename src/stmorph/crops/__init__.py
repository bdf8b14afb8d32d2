"""stmorph.crops"""
