"""stmorph.pl"""
