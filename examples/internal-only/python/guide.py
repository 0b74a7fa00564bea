import os
import google.auth.transport.requests
import google.oauth2.id_token
import requests

def make_internal_request():
    # The URL of the receiving Cloud Run service
    receiving_service_url = os.environ.get("RECEIVING_SERVICE_URL")

    # Acquire an ID token
    auth_req = google.auth.transport.requests.Request()
    id_token = google.oauth2.id_token.fetch_id_token(auth_req, receiving_service_url)

    # Include the ID token in the Authorization header
    headers = {
        "Authorization": f"Bearer {id_token}"
    }

    try:
        response = requests.get(receiving_service_url, headers=headers)
        response.raise_for_status()  # Raise an exception for bad status codes
        return response.text
    except requests.exceptions.RequestException as e:
        print(f"Error making internal request: {e}")
        return None

if __name__ == "__main__":
    # Ensure the environment variable is set with the URL of your internal service
    # e.g., https://your-internal-service-name-xxxx.a.run.app
    response_data = make_internal_request()
    if response_data:
        print(f"Response from internal service: {response_data}")

