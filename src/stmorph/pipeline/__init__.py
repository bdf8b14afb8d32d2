"""stmorph.pipeline"""
