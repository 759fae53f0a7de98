"""Starts moto_server with one change: unsigned STS AssumeRoleWithWebIdentity passes IAM enforcement.

Real AWS never signs AssumeRoleWithWebIdentity (the web identity token is the credential), but
moto's IAM enforcement reads the Authorization header of every request and answers HTTP 500 when
it is missing. Only unsigned requests for the web-identity/SAML actions skip the check; everything
else is enforced exactly as moto does it.

Usage: moto-python moto_launcher.py -H 127.0.0.1 -p PORT
"""

import sys

from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import main

_UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"}
_enforce = ActionAuthenticatorMixin._authenticate_and_authorize_action


def _authenticate_unless_unsigned_sts(self, iam_request_cls, resource="*"):
    if "Authorization" not in self.headers and self._get_action() in _UNSIGNED_ACTIONS:
        return None
    return _enforce(self, iam_request_cls, resource)


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_unless_unsigned_sts

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
