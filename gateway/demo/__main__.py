from gateway.demo.upstream import main

main()
