# Send with: curl --data-binary @example/hello.sh 'localhost:8080/execute?language=bash'
echo "Hello from Bash $BASH_VERSION in a gVisor sandbox"
for n in 1 2 3 4 5; do
    echo "$n squared is $((n * n))"
done
printf '%s\n' banana apple cherry | sort | tr 'a-z' 'A-Z'
