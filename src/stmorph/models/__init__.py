"""stmorph.models"""
